"""Features, one module per file, each a Wokkel XMPPHandler."""
