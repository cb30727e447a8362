"""Site-side pieces of restricted mode: the forced-command gate and `site-receive`."""
