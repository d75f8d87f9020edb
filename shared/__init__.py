"""What the Blender add-on and the backend agree on: the wire protocol, its version and the client.
Imports without torch; relative imports only (the add-on ships it as a subpackage)."""
