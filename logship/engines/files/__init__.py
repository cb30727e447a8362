"""Files: a source tree kept as a copy in a folder at the standby site."""
