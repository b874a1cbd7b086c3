"""Stage — teachers: scoring (query, passage) pairs, ensembles, and the on-disk score store."""
