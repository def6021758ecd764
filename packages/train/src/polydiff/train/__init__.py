"""polydiff.train."""
