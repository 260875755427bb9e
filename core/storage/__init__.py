"""Storage by URI scheme: file, http(s) and s3, and the router that picks one."""
