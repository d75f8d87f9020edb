"""Running jobs, for the server and for batch alike (docs/design.md, section 1).

prior_cache.py keeps loaded priors between jobs; job_runner.py runs one job from a JobSpec (which
holds the GenerateConfig built at the protocol boundary) and reporter.py turns its training events
into protocol events; failures.py words what went wrong; executor.py is the interface the server's
DeviceThread drives, with process_executor.py (a local job process) and ray_executor.py (a Ray actor)
behind it; ray_connection.py joins a Ray cluster, failing fast on a wrong address. Nothing here
imports backend.server or backend.batch: both import from here.
"""
