"""archsearch: search."""
