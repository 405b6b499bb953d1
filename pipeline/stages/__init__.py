"""Built-in stages. Each module is thin: config section in, library call, outputs and stats out."""
