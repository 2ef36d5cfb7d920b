"""One reader per input format; each turns a file (or a corpus name) into a list of conversations."""
