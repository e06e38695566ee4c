"""dpq.io"""
