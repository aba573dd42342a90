# SPDX-License-Identifier: Apache-2.0
# cmake --install BUILD --prefix P: libferry.so (SONAME libferry.so.<ABI>),
# libferry.a, ferry.h, ferry-bench, lib/pkgconfig/ferry.pc and
# lib/cmake/ferry/ferryConfig.cmake (targets ferry::ferry, ferry::ferry_static).
# Both package files are relocatable: they find the prefix from where they lie.
include(CMakePackageConfigHelpers)

set(FERRY_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/ferry)
install(TARGETS ferry ferry_static EXPORT ferryTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS ferry-bench RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(FILES include/ferry.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})

# The pkg-config modules libferry.a needs (found when this build was configured)
set(FERRY_PC_MODULES libcjson libcrypto)
foreach(m CURL:libcurl HIREDIS:hiredis IBVERBS:libibverbs)
  string(REPLACE ":" ";" m "${m}")
  list(GET m 0 prefix)
  list(GET m 1 module)
  if(${prefix}_FOUND)
    list(APPEND FERRY_PC_MODULES ${module})
  endif()
endforeach()

# ferry.pc: prefix relative to the .pc file, so `--prefix P` at install time works
file(RELATIVE_PATH FERRY_PC_TO_PREFIX "/p/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/p")
string(REPLACE ";" " " FERRY_PC_REQUIRES_PRIVATE "${FERRY_PC_MODULES}")
configure_file(cmake/ferry.pc.in ${PROJECT_BINARY_DIR}/ferry.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/ferry.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

install(EXPORT ferryTargets NAMESPACE ferry:: DESTINATION ${FERRY_CMAKE_DIR})
configure_package_config_file(cmake/ferryConfig.cmake.in ${PROJECT_BINARY_DIR}/ferryConfig.cmake
                              INSTALL_DESTINATION ${FERRY_CMAKE_DIR})
# before 1.0 a minor release may change the API: 0.1.x satisfies 0.1 only
write_basic_package_version_file(${PROJECT_BINARY_DIR}/ferryConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/ferryConfig.cmake ${PROJECT_BINARY_DIR}/ferryConfigVersion.cmake
        DESTINATION ${FERRY_CMAKE_DIR})
