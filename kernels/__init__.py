"""archsearch: kernels."""
