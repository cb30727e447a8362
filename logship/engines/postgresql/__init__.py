"""PostgreSQL: WAL archived by PostgreSQL, shipped, replayed by a standby at the site."""
