"""Provider clients, one module per kind of backend API."""
