"""fedgate.models"""
