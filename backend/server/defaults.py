"""The server's own defaults (not run settings): `serve`'s flags and the Server class both read them."""

MAX_QUEUED = 100  # jobs waiting (not running) at once; more are refused until some start
# Niceness added to the job processes, so that on a busy CPU the command loop wins it (docs/server.md).
WORKER_NICE = 5
