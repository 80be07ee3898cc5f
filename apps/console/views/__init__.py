"""The staff console's pages, one module per area; ``apps/console/urls.py`` routes them."""
