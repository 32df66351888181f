"""The device check (see __main__.py): everything that needs an accelerator, one command."""
