"""placeholder"""
def compare(): pass
def site_contributions(): pass
def site_variances(): pass
