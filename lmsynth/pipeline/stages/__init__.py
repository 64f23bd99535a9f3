"""Stage logic: one module per stage (config model, function, row view) and the registry of them."""
