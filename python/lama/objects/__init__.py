"""Object layer (objects.md §1-§4): microdata and hashes, recipes, versioned objects and their
CRDT merges. Pure functions over the core, plus version heads kept in the store."""
