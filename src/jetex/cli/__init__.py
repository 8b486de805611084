"""The ``jetex`` command line. Subcommands live in ``cmd_*.py`` modules (auto-registered)."""
