"""pier's client: pull, push, unpack and run images (see the client issue)."""
