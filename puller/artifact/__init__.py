"""Models, datasets and other files as OCI artifacts: push a directory, pull it, mount it in a container."""
