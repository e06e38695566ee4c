"""dpq.models"""
