"""Where production's static files go: whitenoise's hashed, compressed copies."""

from __future__ import annotations

from whitenoise.storage import CompressedManifestStaticFilesStorage


class StaticFilesStorage(CompressedManifestStaticFilesStorage):
    """Also rewrites the relative imports of native ES modules to the hashed names.

    Without it the hashed entry module, cached for good, imports its unhashed siblings,
    cached for a minute: right after a deploy one page could run old and new modules
    together, and the page's ``modulepreload`` links (hashed) would not match the imports.
    """

    support_js_module_import_aggregation = True
