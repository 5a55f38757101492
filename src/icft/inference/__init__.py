"""Use a trained model: retrieval from long-term memory, generation, chat, export and an HTTP server.

Each command lives in its own module and is wired into the CLI by `commands.add_parsers` / `commands.dispatch`.
"""
