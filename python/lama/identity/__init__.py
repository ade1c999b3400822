"""Identity layer (objects.md §7, connections.md §1.1): the keychain, local instances (Person,
Instance, Keys) and certificates. Sits on the store and crypto of the core; knows nothing of
connections or apps."""
