"""The `polydiff` command (entry-point layer: nothing under packages/ imports it)."""
