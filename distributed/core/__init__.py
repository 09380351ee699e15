"""What every command shares, Ray-free: errors and the parser's number types (commands), the typed
configs, the console, starting Ray (runtime) and the check of resource requests."""
