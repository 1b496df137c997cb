"""Auth worker: exchanges login codes with the platforms, stores users, mints sessions."""
