"""Jobs: sends become jobs; the database is the single source of truth; a queue runs them."""
