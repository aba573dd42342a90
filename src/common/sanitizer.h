/* SPDX-License-Identifier: Apache-2.0 */
/*
 * sanitizer.h — which sanitizer this file is built under, for GCC and Clang
 * alike: GCC defines __SANITIZE_ADDRESS__ / __SANITIZE_THREAD__, Clang
 * (before 17) only answers __has_feature.  Test FERRY_UNDER_ASAN / FERRY_UNDER_TSAN,
 * never the compilers' macros, so that a Clang build gets what a GCC one
 * does (an object kept on purpose is not reported as a leak under Clang's
 * ASan either).
 */
#ifndef FERRY_SANITIZER_H
#define FERRY_SANITIZER_H

#if defined(__SANITIZE_ADDRESS__)
#define FERRY_UNDER_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__)
#define FERRY_UNDER_TSAN 1
#endif
#if defined(__has_feature)
#if __has_feature(address_sanitizer) && !defined(FERRY_UNDER_ASAN)
#define FERRY_UNDER_ASAN 1
#endif
#if __has_feature(thread_sanitizer) && !defined(FERRY_UNDER_TSAN)
#define FERRY_UNDER_TSAN 1
#endif
#endif

#endif
