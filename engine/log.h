/* Logging to stderr with a level and a timestamp. The level is set once at
 * start (EASEL_LOG=debug|info|warn|error) and read without locks after. */
#ifndef EASEL_LOG_H
#define EASEL_LOG_H

typedef enum { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR } log_level;

void log_set_level(log_level lvl);
/* Parses "debug", "info", "warn", "error"; returns -1 if unknown. */
int log_parse_level(const char *s);
void log_msg(log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
