"""What the administrator touches: the CLI, the admin console, backup and upgrade."""
