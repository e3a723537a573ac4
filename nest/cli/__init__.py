"""The `nest` command line: parse, call the HTTP client, print."""
