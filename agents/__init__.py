"""archsearch: agents."""
