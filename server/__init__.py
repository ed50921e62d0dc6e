"""fedgate.server"""
