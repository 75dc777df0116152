"""One time format in every page and the admin: ISO dates and 24-hour times (FORMAT_MODULE_PATH).

Django's locale formats win over the DATETIME_FORMAT setting, so the override is a format module
for the locales in use (``en`` and ``en_GB``, see LANGUAGE_CODE).
"""
