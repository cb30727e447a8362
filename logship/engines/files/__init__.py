"""The files connector: a source folder kept as a copy in a target folder at the standby site."""
