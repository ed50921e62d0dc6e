"""fedgate.strategies"""
