"""PostgreSQL's CLI verbs (declared in `logship.engines.postgresql.verbs`)."""
