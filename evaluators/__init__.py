"""archsearch: evaluators."""
