"""polydiff.nn."""
