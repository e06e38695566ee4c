"""dpq.algorithms"""
