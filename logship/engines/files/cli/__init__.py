"""The files connector's CLI verbs (declared in `logship.engines.files.verbs`)."""
