"""The `marc` command: assembles the subcommands each package exposes (marc, export, service, loadtest)."""
