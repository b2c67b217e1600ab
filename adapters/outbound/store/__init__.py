"""Response stores: where cached completions live (Redis in `redis`, or SQLite on local disk in
`embedded`). The composition root imports the module its CACHE_MODE needs; this package module
imports neither, so the embedded mode never loads the Redis client and vice versa."""
