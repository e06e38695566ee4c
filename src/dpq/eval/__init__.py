"""dpq.eval"""
