/* EASEL_GIT: the commit this binary was built from (written at every build
 * by cmake/git_version.cmake; a build without CMake may pass -DEASEL_GIT). */
#ifndef EASEL_CLI_VERSION_H
#define EASEL_CLI_VERSION_H
#ifndef EASEL_GIT
#if defined(__has_include)
#if __has_include("easel_git.h")
#include "easel_git.h"
#endif
#endif
#endif
#ifndef EASEL_GIT
#define EASEL_GIT "unknown"
#endif
#endif
