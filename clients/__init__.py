"""fedgate.clients"""
