"""``mb``: drive several MagickBox machines from one shell, over their HTTP API only."""
