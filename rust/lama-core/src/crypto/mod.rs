//! NaCl-compatible crypto and keychain (objects.md §7, connections.md §1).
